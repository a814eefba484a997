"""Download OLMo's preprocessed Dolma token files (or any files) over HTTP(S), resumably.

    python tools/download_data.py [URL ...] [--preset NAME] [--output-dir data/dolma] [--retries 5] [--timeout 60]

With neither URLs nor --preset it fetches the `recipe` preset: the one file configs/1b.py trains on,
data/dolma/part-001-00000.npy (~24 GB). Each file is written to `<name>.part` and renamed into place only once its
size matches the server's length; rerunning the same command after an interruption resumes where it stopped, and
skips files that are already complete.
"""

from __future__ import annotations

import argparse
import sys

from olmo_jax.download import PRESETS, DownloadError, destination, download, preset_urls


def main(argv: list[str] | None = None) -> int:
    presets = "\n".join(f"  {name}: {len(urls)} file(s), e.g. {urls[0]}" for name, urls in PRESETS.items())
    parser = argparse.ArgumentParser(description=__doc__, epilog=f"presets:\n{presets}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("urls", nargs="*", help="http(s) URLs of files to download")
    parser.add_argument("--preset", action="append", choices=list(PRESETS), help="a named list of URLs (repeatable)")
    parser.add_argument("--output-dir", default="data/dolma", help="where files go (default: %(default)s)")
    parser.add_argument("--retries", type=int, default=5, help="retries per file after transient failures")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a connection or a read")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.retries < 0 or args.timeout <= 0:
        parser.error(f"--retries must be >= 0 and --timeout > 0 (got {args.retries}, {args.timeout})")

    urls = list(args.urls)
    for name in args.preset or ([] if urls else ["recipe"]):
        urls += [u for u in preset_urls(name) if u not in urls]
    try:
        targets = [(url, destination(url, args.output_dir)) for url in urls]
        names = [dest for _, dest in targets]
        clash = next((d for d in names if names.count(d) > 1), None)
        if clash is not None:
            raise DownloadError(f"Several URLs would be saved as {clash}; download them into different directories.")
        for url, dest in targets:
            download(url, dest, retries=args.retries, timeout=args.timeout, progress=not args.quiet)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e} (writing into {args.output_dir})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the .part file(s)", file=sys.stderr)
        return 130
    for _, dest in targets:
        print(f"{dest} ({dest.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
