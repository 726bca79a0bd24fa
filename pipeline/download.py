"""
Fetch the released weights from their official Hugging Face addresses, with a progress bar, resume
of partial downloads (HTTP Range on `<file>.part`) and a size/SHA-256 check against what the server
announces (Hugging Face sends the LFS object's SHA-256 as `X-Linked-Etag` and its size as
`X-Linked-Size`). A file already present with the right size is kept.
"""

import os
import urllib.error
import urllib.request

from tqdm import tqdm

from pipeline.common import UsageError, file_sha256

HF = "https://huggingface.co"
FILES = {
    "vavae": "hustvl/vavae-imagenet256-f16d32-dinov2/resolve/main/vavae-imagenet256-f16d32-dinov2.pt",
    "stats": "hustvl/vavae-imagenet256-f16d32-dinov2/resolve/main/latents_stats.pt",
    "dit-800ep": "hustvl/lightningdit-xl-imagenet256-800ep/resolve/main/lightningdit-xl-imagenet256-800ep.pt",
    "dit-64ep": "hustvl/lightningdit-xl-imagenet256-64ep/resolve/main/lightningdit-xl-imagenet256-64ep.pt",
}


def remote_info(url):
    """(size or None, sha256 or None) from a HEAD request."""
    req = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(req, timeout=60) as r:
        headers = r.headers
    size = headers.get("X-Linked-Size") or headers.get("Content-Length")
    etag = (headers.get("X-Linked-Etag") or headers.get("ETag") or "").strip('"').removeprefix("W/").strip('"')
    sha = etag if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag.lower()) else None
    return (int(size) if size else None), sha


def download(url, dest, expected_sha256=None):
    """Download `url` to `dest` (resuming `dest.part`), verify size and hash, then rename into place."""
    try:
        size, sha = remote_info(url)
    except (urllib.error.URLError, OSError) as e:
        raise UsageError(f"cannot reach {url} ({e}); check the internet switch of the notebook, or attach the "
                         f"weights as a data set and pass their path") from None
    sha = expected_sha256 or sha
    if os.path.isfile(dest) and (size is None or os.path.getsize(dest) == size):
        if sha is None or file_sha256(dest) == sha:
            print(f"{dest}: present and verified")
            return dest
    part = dest + ".part"
    have = os.path.getsize(part) if os.path.isfile(part) else 0
    if size is not None and have > size:
        os.unlink(part)
        have = 0
    if size is None or have < size:
        req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                if have and r.status != 206:   # server ignored the range: start again
                    have = 0
                mode = "ab" if have else "wb"
                with open(part, mode) as f, tqdm(total=size, initial=have, unit="B", unit_scale=True,
                                                 desc=os.path.basename(dest)) as bar:
                    for block in iter(lambda: r.read(1 << 20), b""):
                        f.write(block)
                        bar.update(len(block))
        except (urllib.error.URLError, OSError) as e:
            raise UsageError(f"download of {url} interrupted ({e}); run the same command again to resume") from None
    got = os.path.getsize(part)
    if size is not None and got != size:
        raise UsageError(f"{part}: {got} bytes, expected {size}; run the same command again to resume")
    if sha is not None and file_sha256(part) != sha:
        os.unlink(part)
        raise UsageError(f"{url}: SHA-256 mismatch (expected {sha}); the partial file was removed, run again")
    os.replace(part, dest)
    print(f"{dest}: {got / 2 ** 20:.1f} MiB, verified" + (" (sha256)" if sha else " (size)"))
    return dest


def main(argv=None):
    import argparse
    from pipeline.common import run_cli
    p = argparse.ArgumentParser(description="Download the released VA-VAE tokenizer, ImageNet latent stats and "
                                            "(on request) the ImageNet LightningDiT-XL/1 checkpoint.")
    p.add_argument("--dest", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + "/pretrained")
    p.add_argument("--dit", choices=["800ep", "64ep"], default=None, help="also fetch lightningdit-xl-imagenet256-*.pt")
    p.add_argument("--only", choices=sorted(FILES), nargs="+", default=None)
    p.add_argument("--base_url", default=HF, help=argparse.SUPPRESS)  # tests point this at a local server
    args = p.parse_args(argv)
    names = args.only or ["vavae", "stats"] + ([f"dit-{args.dit}"] if args.dit else [])

    def run():
        os.makedirs(args.dest, exist_ok=True)
        for name in names:
            url = f"{args.base_url.rstrip('/')}/{FILES[name]}"
            download(url, os.path.join(args.dest, os.path.basename(FILES[name])))
    run_cli(run)


if __name__ == "__main__":
    main()
