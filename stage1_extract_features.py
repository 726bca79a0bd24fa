"""
Stage 1: encode a folder of micro-Doppler spectrograms (one subfolder per class) into VA-VAE latents,
with this data's latent statistics, a stats recommendation and a reconstruction report.

    python stage1_extract_features.py --data_dir IMAGES --vavae_path pretrained/vavae-imagenet256-f16d32-dinov2.pt
"""

import argparse

from pipeline.cli import ShowDefaults, fraction, nonnegative_int, positive_int, settings_defaults
from pipeline.common import run_cli
from pipeline.extract import ExtractSettings, run
from pipeline.figure_trim import parse_trim
from pipeline.preprocess import hygiene_lines
from pipeline.size_choice import describe as describe_size_choice


def trim_option(text):
    """argparse type for --trim: the text itself once parse_trim accepts it (dataset.json records it)."""
    try:
        parse_trim(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return str(text).strip().lower()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                formatter_class=ShowDefaults)
    p.add_argument("--data_dir", required=True, help="one subfolder per class (images directly inside: one class)")
    p.add_argument("--vavae_path",
                   help="VA-VAE tokenizer (.pt or .safetensors), or 'demo' for the offline demo tokenizer")
    p.add_argument("--imagenet_stats", help="ImageNet latents_stats.pt to compare with")
    p.add_argument("--output_dir")
    p.add_argument("--image_size",
                   help="auto: when every image would be enlarged 1.5x or more to 256, the smallest of their own size "
                        "(rounded up to a multiple of 32), 192 and 256 whose tokenizer round trips are recognised at "
                        "most 0.05 less often than at 256 by classifiers trained on the data (needs 15+ images per "
                        "class; 20-60 s); otherwise 256. Or N, a multiple of 16 (stage 2 trains square latents)")
    p.add_argument("--resize", choices=["stretch", "center_crop", "pad"],
                   help="stretch (default) keeps the whole spectrogram; cropping can cut Doppler extremes")
    p.add_argument("--color", choices=["auto", "gray", "rgb"],
                   help="auto: grayscale stays gray, a colour-mapped set (jet, viridis, parula, turbo, hot, ...) is "
                        "inverted to one intensity channel and stage 3 draws in the same map, other colour stays "
                        "RGB; gray: luminance; rgb: colours as they are")
    p.add_argument("--trim", type=trim_option,
                   help="auto: cut the plot area out of figure exports (margins, axes, labels, colour bar), plain "
                        "spectrograms untouched; none; or x0,y0,x1,y1 in pixels for every image")
    p.add_argument("--flip", choices=["none", "time", "doppler"],
                   help="also store flipped latents (off by default: a flip changes the activity's meaning)")
    p.add_argument("--val_fraction", type=fraction, help="held-out fraction per class (0: none)")
    p.add_argument("--seed", type=nonnegative_int)
    p.add_argument("--batch_size", type=positive_int)
    p.add_argument("--num_workers", type=nonnegative_int)
    p.add_argument("--shard_size", type=positive_int, help="images per shard (the unit of resume)")
    p.add_argument("--device")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--sample_posterior", action="store_true", help="store posterior samples instead of the mean")
    p.add_argument("--recon_images", type=nonnegative_int, help="per class, for the reconstruction report")
    p.add_argument("--overwrite", action="store_true", help="replace latents made with other settings")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping it")
    p.add_argument("--trust_checkpoint", action="store_true",
                   help="allow a tokenizer file that needs arbitrary code to unpickle (only for sources you trust)")
    p.set_defaults(**settings_defaults(ExtractSettings))
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    result = run(ExtractSettings(**vars(args)))
    if result is None:  # not rank 0
        return
    manifest, report, recon = result
    counts = ", ".join(f"{c['name']}: {c['train']}+{c['heldout']}" for c in manifest["classes"])
    print(f"encoded {manifest['num_images']} images ({counts} train+held-out), latents {manifest['latent_shape']}, "
          f"colour {manifest['color_mode']}, in {manifest['timings']['total_s']:.1f} s -> {args.output_dir}")
    print(describe_size_choice(manifest["image_size_choice"]))
    print(f"colour: {manifest['color_detection']['reason']}")
    trim = manifest["trim"]
    if trim["mode"] != "none":
        print(f"trim {trim['mode']}: {trim['trimmed']} of {trim['images']} image(s) cut to their plot area "
              f"(boxes in dataset.json)")
    if manifest["value_range"]:
        vr = manifest["value_range"]
        print(f"values: {vr['kind']} data scaled by one data-set range {vr['lo']:.6g} .. {vr['hi']:.6g} "
              f"(0.5/99.5 percentiles of the training images)")
    for line in hygiene_lines(manifest["hygiene"], dict(mixed=manifest["hygiene"].get("mixed_color"),
                                                         off_map=manifest["hygiene"].get("off_map", []),
                                                         colormap=manifest["colormap"])):
        print(f"hygiene: {line}")
    if manifest["skipped"]:
        print(f"skipped {len(manifest['skipped'])} unreadable file(s), listed in dataset.json, e.g. "
              f"{manifest['skipped'][0]['path']}: {manifest['skipped'][0]['reason']}")
    if recon:
        print(f"tokenizer reconstruction: PSNR {recon['overall']['psnr']:.1f} dB, SSIM {recon['overall']['ssim']:.3f} "
              f"(per class in stats_report.json, picture in reconstruction.png)")
    print(f"stats: {report['recommendation']} - {report['reason']}")


if __name__ == "__main__":
    run_cli(main)
