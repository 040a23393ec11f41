"""`pam parity FIXTURE_DIR`: compare against a golden fixture of the official implementation (see docs/parity.md).

Prints one row per case and quantity on stdout; exit status 1 when any row FAILs."""

from __future__ import annotations

from ..parity import format_row, run_parity


def add_parser(commands) -> None:
    parser = commands.add_parser("parity", help="compare against a golden fixture of the official implementation")
    parser.add_argument("fixture", help="fixture folder (checkpoint/, sam2/, spec.json, cases/)")
    parser.add_argument("--device", default="cpu",
                        help="where the fixture's checkpoint runs, in float32 (default: %(default)s)")
    parser.add_argument("--case", action="append", default=None, metavar="NAME",
                        help="run only this case of spec.json (repeatable; default: all)")
    parser.set_defaults(run=run)


def run(args) -> int:
    print(f"{'case':<28} {'quantity':<34} {'max_abs_err':>10} {'tol':>6}  status", flush=True)
    rows = run_parity(args.fixture, device=args.device, report=lambda row: print(format_row(row), flush=True),
                      cases=args.case)
    failed = sum(r.status == "FAIL" for r in rows)
    passed = sum(r.status == "PASS" for r in rows)
    unsupported = sum(r.status == "NOT SUPPORTED" for r in rows)
    print(f"\nparity: {passed} passed, {failed} failed, {unsupported} not supported")
    return 1 if failed else 0
