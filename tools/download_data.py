"""Download OLMo's preprocessed Dolma token files (or any files) over HTTP(S), resumably.

    python tools/download_data.py [URL ...] [--preset NAME] [--output-dir data/dolma] [--retries 5] [--timeout 60]

With neither URLs nor --preset it fetches the `recipe` preset: the one file configs/1b.py trains on,
data/dolma/part-001-00000.npy (~24 GB). Each file is written to `<name>.part` and renamed into place only once its
size matches the server's length; rerunning the same command after an interruption resumes where it stopped, and
skips files that are already complete.
"""

from __future__ import annotations

import sys

from olmo_jax import cli
from olmo_jax.data.download import PRESETS, destination, download, preset_urls
from olmo_jax.errors import DownloadError


def parser() -> cli.ArgumentParser:
    presets = "\n".join(f"  {name}: {len(urls)} file(s), e.g. {urls[0]}" for name, urls in PRESETS.items())
    parser = cli.ArgumentParser(prog="python tools/download_data.py", description=__doc__,
                                epilog=f"presets:\n{presets}")
    parser.add_argument("urls", nargs="*", help="http(s) URLs of files to download")
    parser.add_argument("--preset", action="append", choices=list(PRESETS), help="a named list of URLs (repeatable)")
    parser.add_argument("--output-dir", default="data/dolma", help="where files go (default: %(default)s)")
    parser.add_argument("--retries", type=int, default=5, help="retries per file after transient failures")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a connection or a read")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def run(argv: list[str] | None = None) -> int:
    p = parser()
    args, _ = p.parse_with_overrides(argv)
    if args.retries < 0 or args.timeout <= 0:
        p.error(f"--retries must be >= 0 and --timeout > 0 (got {args.retries}, {args.timeout})")

    urls = list(args.urls)
    for name in args.preset or ([] if urls else ["recipe"]):
        urls += [u for u in preset_urls(name) if u not in urls]
    targets = [(url, destination(url, args.output_dir)) for url in urls]
    names = [dest for _, dest in targets]
    clash = next((d for d in names if names.count(d) > 1), None)
    if clash is not None:
        raise DownloadError(f"Several URLs would be saved as {clash}; download them into different directories.")
    try:
        for url, dest in targets:
            download(url, dest, retries=args.retries, timeout=args.timeout, progress=not args.quiet)
    except OSError as e:  # the local side: the directory cannot be created or written, the disk is full...
        raise DownloadError(f"{e} (writing into {args.output_dir})") from e
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the .part file(s)", file=sys.stderr)
        return 130
    for _, dest in targets:
        print(f"{dest} ({dest.stat().st_size:,} bytes)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
