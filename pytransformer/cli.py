"""The `pytransformer` command."""

from __future__ import annotations

import argparse
import platform
import sys

from . import __version__, _runtime, selfcheck


def cmd_info(args) -> int:
    info = _runtime.cpu_info()
    print(f"pytransformer {__version__} (Python {platform.python_version()}, {platform.machine()})")
    print(f"isa: {info['isa']}")
    print(f"available isas: {', '.join(info['available_isas'])}")
    print(f"openmp: {'yes' if info['openmp'] else 'no (kernels run serially)'}")
    print(f"threads: {info['num_threads']}")
    print(f"cuda: {'available' if info['cuda'] else 'not available (CPU build)'}")
    print(f"\nself-check: every kernel, forward and backward, vs the float64 reference (tolerance {selfcheck.TOLERANCE:g})")
    results = selfcheck.run()
    isas = list(results)
    names = list(next(iter(results.values())))
    width = max(len(n) for n in names)
    print(f"{'kernel':<{width}}  " + "  ".join(f"{isa:>18}" for isa in isas))
    failed = 0
    for name in names:
        cells = []
        for isa in isas:
            err = results[isa][name]
            ok = err <= selfcheck.TOLERANCE
            failed += not ok
            cells.append(f"{'pass' if ok else 'FAIL'} ({err:8.1e})".rjust(18))
        print(f"{name:<{width}}  " + "  ".join(cells))
    print(f"\n{'all kernels pass' if not failed else f'{failed} FAILED'}")
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pytransformer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="print the machine, ISA and threads, then self-check every kernel")
    p.set_defaults(func=cmd_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
