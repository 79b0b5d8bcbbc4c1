# Step 6: the paper-style report: tables (CSV, Markdown, LaTeX), plots, significance, provenance.


localrules:
    report,
    report_available,


rule report:
    input:
        metrics=run_files(f"results/evaluate/{RUN}/metrics.json"),
        predictions=run_files(f"results/evaluate/{RUN}/predictions.csv"),
        logs=run_files(f"results/finetune/{RUN}/log.csv"),
        mlm=pretrain_losses(),
        baseline=baseline_metrics(),
        knn=knn_selections(),
        robustness=(
            run_files(f"results/evaluate/{RUN}/robustness.json") if ROBUSTNESS else []
        ),
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
        out=lambda w, output: os.path.dirname(output.table_md),
        benchmarks=layout.BENCHMARK_DIR,
    shell:
        "python {params.script} --metrics {input.metrics} --logs {input.logs}"
        " --pretrain-logs {input.mlm} --baseline {input.baseline} --knn {input.knn}"
        " --robustness {input.robustness}"
        " --benchmarks {params.benchmarks}"
        " --config-json {params.config:q} --out {params.out} > {log} 2>&1"


# After a job failed for a reason a study cannot record (a crash, memory: divergence is recorded,
# see on_divergence), `snakemake --keep-going` runs everything else; this reports what finished,
# in results/report_available/, its notes listing the runs missing. Never part of `all`.
use rule report as report_available with:
    input:
        metrics=finished(f"results/evaluate/{RUN}/metrics.json"),
        predictions=finished(f"results/evaluate/{RUN}/predictions.csv"),
        logs=finished(f"results/finetune/{RUN}/log.csv"),
        mlm=existing(pretrain_losses()),
        baseline=existing(baseline_metrics()),
        knn=existing(knn_selections()),
        robustness=(
            finished(f"results/evaluate/{RUN}/robustness.json") if ROBUSTNESS else []
        ),
    output:
        directory(f"{REPORT_DIR}_available"),
    log:
        "results/logs/report/report_available.log",
    benchmark:
        "results/benchmarks/report/report_available.tsv"
    params:
        script=script("report.py"),
        config=lambda w: as_json(config, keep_order=True),
        out=lambda w, output: output[0],
        benchmarks=layout.BENCHMARK_DIR,
