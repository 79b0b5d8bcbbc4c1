# Step 6: the paper-style report: tables (CSV, Markdown, LaTeX), plots, significance, provenance.


localrules:
    report,


rule report:
    input:
        metrics=run_files(f"results/evaluate/{RUN}/metrics.json"),
        predictions=run_files(f"results/evaluate/{RUN}/predictions.csv"),
        logs=run_files(f"results/finetune/{RUN}/log.csv"),
        mlm=[f"results/pretrain/{m}/{c}/loss.csv" for m, c in pretrain_chains()],
        baseline=[f"results/baseline/{t}/metrics.json" for t in config["tasks"]],
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
