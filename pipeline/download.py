"""
Fetch the released weights into pretrained/ (or --dest): the VA-VAE tokenizer and its ImageNet latent
statistics, and on request the ImageNet LightningDiT-XL/1 checkpoint.

The transfer is huggingface_hub's `hf_hub_download`: it follows the Hub's redirect to its CDN, resumes
an interrupted download, keeps the file in the Hugging Face cache (HF_HOME / HF_HUB_CACHE) and honours
HF_ENDPOINT (a mirror) and HF_TOKEN. What this module adds is the check huggingface_hub does not make:
the SHA-256 of each released file is pinned below and compared with the bytes that arrived, so a
mirror, a proxy or a damaged cache cannot hand over other weights unnoticed. Only a verified file is
put at its destination.
"""

import os
import shutil

from pipeline.common import UsageError, atomic_path, file_sha256

HUB = "https://huggingface.co"
REVISION = "main"
FILES = {  # CLI name -> (repository, file name); the file lands as <dest>/<file name>
    "vavae": ("hustvl/vavae-imagenet256-f16d32-dinov2", "vavae-imagenet256-f16d32-dinov2.pt"),
    "stats": ("hustvl/vavae-imagenet256-f16d32-dinov2", "latents_stats.pt"),
    "dit-800ep": ("hustvl/lightningdit-xl-imagenet256-800ep", "lightningdit-xl-imagenet256-800ep.pt"),
    "dit-64ep": ("hustvl/lightningdit-xl-imagenet256-64ep", "lightningdit-xl-imagenet256-64ep.pt"),
}

# SHA-256 of the released files: the Git LFS object ids of the uploads, as the Hub shows them on the
# file pages and in the upload commits. Pinned here so that the check does not rest on what the server
# (or a mirror) announces. The two LightningDiT checkpoints have no published value to pin yet: they
# are checked against the LFS SHA-256 the server announces (X-Linked-Etag), which catches a damaged
# transfer or cache but trusts the server.
PINNED_SHA256 = {
    # huggingface.co/hustvl/vavae-imagenet256-f16d32-dinov2, upload commit 8751307 (2.15 GB)
    "vavae-imagenet256-f16d32-dinov2.pt": "2088e07378d26047e7bfcbae669feb5d4eab37276f23621db3eebdacc7d82b6b",
    # same repository, upload commit 15cf70a (1,788 bytes)
    "latents_stats.pt": "fb96ba21f7f423ae9b0d1e732b0eac16d386f0653bf21608df682138c2fa5ee7",
}

OFFLINE_HINT = ("turn on the notebook's internet (Kaggle: Settings > Internet), set HF_ENDPOINT to a reachable "
                "mirror, or attach the weights as a data set and pass their path (--vavae_path, --imagenet_stats)")


def _hub():
    """huggingface_hub, imported on first use so that the rest of the pipeline does not need it."""
    try:
        import huggingface_hub
    except ImportError:
        raise UsageError("huggingface_hub is not installed; pip install huggingface_hub "
                         "(or pip install -r requirements.txt)") from None
    return huggingface_hub


def _endpoint():
    """HF_ENDPOINT as it is now, or None for the Hub. huggingface_hub reads the variable once, when it is
    imported; reading it per call also honours a mirror set later in the same process (a notebook cell
    that sets os.environ after something imported huggingface_hub)."""
    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or None


def _is_request_error(e):
    """Whether `e` is a failed request rather than a bug. huggingface_hub's own errors (HTTP status,
    offline mode, not in cache) and those of requests are OSErrors; the httpx transport errors that
    newer huggingface_hub versions let through are not, hence the class-name check."""
    return isinstance(e, OSError) or any(k.__name__ in ("TransportError", "HTTPError") for k in type(e).__mro__)


def _request_failed(e, repo_id, filename):
    """One-line UsageError for a failed request: what failed, why (first line of the error), what to do."""
    where = f"{_endpoint() or HUB}/{repo_id}"
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status in (401, 403):
        todo = "the server wants a token with access to it: set HF_TOKEN"
    elif status == 404:
        todo = "the server does not have it: check HF_ENDPOINT, or attach the weights as a data set and pass their path"
    else:
        todo = OFFLINE_HINT
    return UsageError(f"cannot fetch {filename} from {where} ({reason}); {todo}")


def _request(call, repo_id, filename):
    """Run one huggingface_hub call. A failed request becomes a one-line UsageError; a full or read-only
    disk goes on to run_cli's own one-line message, and anything else (a bug) keeps its traceback."""
    try:
        return call()
    except Exception as e:
        if not _is_request_error(e) or (isinstance(e, OSError) and e.errno in (13, 28, 30)):
            raise
        raise _request_failed(e, repo_id, filename) from None


def _lfs_sha256(etag):
    """The SHA-256 in an LFS file's etag (the Hub sends X-Linked-Etag: "<sha256>"), else None."""
    etag = (etag or "").strip().removeprefix("W/").strip('"').lower()
    return etag if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag) else None


def _keep_present(dest, expected):
    """True when `dest` holds the expected bytes. Other bytes under the release's name were not put there
    by this module (it places verified files only): they are left alone and named in a one-line error."""
    got = file_sha256(dest)
    if got != expected:
        raise UsageError(f"{dest}: SHA-256 {got} is not the released file's ({expected}); it was not downloaded "
                         f"by this script and is left as it is: move or delete it, then run again")
    print(f"{dest}: present, SHA-256 verified")
    return True


def _drop_from_cache(path):
    """Remove a rejected download from the Hugging Face cache (the snapshot link and the blob it points
    to), so that the next run fetches it again instead of finding it there."""
    for p in {path, os.path.realpath(path)}:
        if os.path.lexists(p):
            os.unlink(p)


def _place(src, dest):
    """Put the verified cached file at `dest` in one rename: a hard link to the cache's copy when both
    are on one file system (no second copy of 2 GB), else a copy."""
    src = os.path.realpath(src)
    with atomic_path(dest) as tmp:
        os.unlink(tmp)  # atomic_path created the temp file; a hard link needs the name free
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def download(repo_id, filename, dest, sha256=None, revision=REVISION):
    """Put `filename` of the Hub repository `repo_id` at `dest`, verified by SHA-256, and return `dest`.

    The expected hash is `sha256`, else the pinned one, else the LFS SHA-256 the server announces. A file
    already at `dest` with the pinned hash is kept without any request; one with another hash is refused
    and left untouched. Failures (offline, HTTP errors, a hash mismatch) raise a one-line UsageError."""
    expected = pinned = sha256 or PINNED_SHA256.get(filename)
    if expected and os.path.isfile(dest) and _keep_present(dest, expected):
        return dest
    hub = _hub()
    endpoint = _endpoint()
    # One HEAD request first: offline, it fails at once (hf_hub_download retries for ~20 s before it gives
    # up), and it gives the announced LFS SHA-256 for a file that has no pinned one.
    url = hub.hf_hub_url(repo_id, filename, revision=revision, endpoint=endpoint)
    meta = _request(lambda: hub.get_hf_file_metadata(url), repo_id, filename)
    if expected is None:
        expected = _lfs_sha256(meta.etag)
        if expected is None:
            raise UsageError(f"{filename}: {endpoint or HUB}/{repo_id} announces no SHA-256 for it and none is "
                             f"pinned, so it cannot be verified; use the Hub (unset HF_ENDPOINT) or attach the "
                             f"weights as a data set")
        if os.path.isfile(dest) and _keep_present(dest, expected):
            return dest
    # The commit the HEAD resolved, so that the download is the file the announced hash belongs to.
    cached = _request(lambda: hub.hf_hub_download(repo_id, filename, revision=meta.commit_hash or revision,
                                                  endpoint=endpoint), repo_id, filename)
    got = file_sha256(cached)
    if got != expected:
        _drop_from_cache(cached)
        raise UsageError(f"{filename} from {endpoint or HUB}/{repo_id}: SHA-256 mismatch (expected {expected}, got "
                         f"{got}); the download was deleted, run again; if it happens again the server sends other "
                         f"bytes: unset HF_ENDPOINT, or attach the official file as a data set")
    _place(cached, dest)
    print(f"{dest}: {os.path.getsize(dest) / 2 ** 20:.1f} MiB, SHA-256 verified "
          f"({'pinned' if pinned else 'as announced by the server'})")
    return dest


def main(argv=None):
    import argparse
    from pipeline.common import run_cli
    p = argparse.ArgumentParser(
        description="Download the released VA-VAE tokenizer, ImageNet latent stats and (on request) the ImageNet "
                    "LightningDiT-XL/1 checkpoint, each verified by SHA-256.",
        epilog="Environment (read by huggingface_hub): HF_ENDPOINT=<mirror URL>, HF_TOKEN=<token>, "
               "HF_HOME / HF_HUB_CACHE=<cache folder>.")
    p.add_argument("--dest", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + "/pretrained")
    p.add_argument("--dit", choices=["800ep", "64ep"], default=None, help="also fetch lightningdit-xl-imagenet256-*.pt")
    p.add_argument("--only", choices=sorted(FILES), nargs="+", default=None)
    args = p.parse_args(argv)
    names = args.only or ["vavae", "stats"] + ([f"dit-{args.dit}"] if args.dit else [])

    def run():
        if _endpoint():
            print(f"mirror: HF_ENDPOINT={_endpoint()}")
        for name in names:
            repo_id, filename = FILES[name]
            download(repo_id, filename, os.path.join(args.dest, filename))
    run_cli(run)


if __name__ == "__main__":
    main()
