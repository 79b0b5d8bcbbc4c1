"""Deploy step 3: the deployment table (deploy.md/.csv/.tex) and plot (deploy.png)."""

import argparse

from dapt.core.errors import run_main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--measurements", nargs="+", required=True, help="measure.json files")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    from dapt.deploy.table import write_deploy_report

    rows = write_deploy_report(args.measurements, args.out)
    print(f"deploy report: {len(rows)} rows in {args.out}")


if __name__ == "__main__":
    run_main(main)
