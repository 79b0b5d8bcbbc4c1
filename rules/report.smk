# Step 6: the paper-style report: tables (CSV, Markdown, LaTeX), plots, significance, provenance.

# Snakemake's report() under another name: in a function, `report` would parse as the directive.
from snakemake.io import report as html_report


localrules:
    report,


def report_outputs():
    """The report's files (dapt.layout.REPORT, the list the report writes), named by file name;
    those with a caption (report/<caption>.rst) appear in Snakemake's HTML report."""
    return {
        f.name.replace(".", "_"): (
            html_report(
                f"{REPORT_DIR}/{f.name}",
                caption=f"../report/{f.caption}.rst",
                category=f.category,
            )
            if f.caption
            else f"{REPORT_DIR}/{f.name}"
        )
        for f in layout.REPORT
    }


rule report:
    input:
        metrics=run_files(f"results/evaluate/{RUN}/metrics.json"),
        predictions=run_files(f"results/evaluate/{RUN}/predictions.csv"),
        logs=run_files(f"results/finetune/{RUN}/log.csv"),
        mlm=[f"results/pretrain/{m}/{c}/loss.csv" for m, c in pretrain_chains()],
    output:
        **report_outputs(),
    log:
        "results/logs/report/report.log",
    benchmark:
        "results/benchmarks/report/report.tsv"
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        script=script("report.py"),
        config=lambda w: as_json(config, keep_order=True),
        out=REPORT_DIR,
        benchmarks=layout.BENCHMARK_DIR,
    shell:
        "python {params.script} --metrics {input.metrics} --logs {input.logs}"
        " --pretrain-logs {input.mlm} --benchmarks {params.benchmarks}"
        " --config-json {params.config:q} --out {params.out} > {log} 2>&1"
