# Step 6: the paper-style report: tables (CSV, Markdown, LaTeX), plots, significance, provenance.


include: "report_helpers.smk"


localrules:
    report,
    report_available,


rule report:
    input:
        metrics=run_files(layout.EVALUATE_METRICS),
        predictions=run_files(layout.EVALUATE_PREDICTIONS),
        logs=run_files(layout.FINETUNE_LOG),
        mlm=pretrain_losses(),
        baseline=baseline_metrics(),
        knn=knn_selections(),
        robustness=run_files(layout.EVALUATE_ROBUSTNESS) if ROBUSTNESS else [],
    output:
        **report_outputs(REPORT_LIST),
    log:
        layout.log_path("report", "report"),
    benchmark:
        layout.benchmark_path("report", "report")
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
        metrics=finished(layout.EVALUATE_METRICS),
        predictions=finished(layout.EVALUATE_PREDICTIONS),
        logs=finished(layout.FINETUNE_LOG),
        mlm=existing(pretrain_losses()),
        baseline=existing(baseline_metrics()),
        knn=existing(knn_selections()),
        robustness=finished(layout.EVALUATE_ROBUSTNESS) if ROBUSTNESS else [],
    output:
        report=directory(layout.REPORT_AVAILABLE_DIR),
    log:
        layout.log_path("report", "report_available"),
    benchmark:
        layout.benchmark_path("report", "report_available")
    params:
        script=script("report.py"),
        config=lambda w: as_json(config, keep_order=True),
        out=lambda w, output: output.report,
        benchmarks=layout.BENCHMARK_DIR,
