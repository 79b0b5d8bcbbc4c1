# Step 6: the paper-style report: tables (CSV, Markdown, LaTeX), plots, significance, provenance.


localrules:
    report,


rule report:
    input:
        metrics=run_files(f"results/evaluate/{RUN}/metrics.json"),
        predictions=run_files(f"results/evaluate/{RUN}/predictions.csv"),
        logs=run_files(f"results/finetune/{RUN}/log.csv"),
        mlm=[f"results/pretrain/{m}/{c}/loss.csv" for m, c in pretrain_chains()],
    output:
        table_md=report(
            f"{REPORT_DIR}/table.md", caption="../report/table.rst", category="Tables"
        ),
        table_csv=f"{REPORT_DIR}/table.csv",
        table_tex=f"{REPORT_DIR}/table.tex",
        table_paper_tex=f"{REPORT_DIR}/table_paper.tex",
        results=report(
            f"{REPORT_DIR}/results.csv",
            caption="../report/results.rst",
            category="Tables",
        ),
        ensemble=f"{REPORT_DIR}/ensemble.csv",
        significance=report(
            f"{REPORT_DIR}/significance.csv",
            caption="../report/significance.rst",
            category="Tables",
        ),
        runtime=report(
            f"{REPORT_DIR}/runtime.csv",
            caption="../report/runtime.rst",
            category="Cost",
        ),
        scores=report(
            f"{REPORT_DIR}/scores.png",
            caption="../report/scores.rst",
            category="Plots",
        ),
        mlm=report(
            f"{REPORT_DIR}/mlm_loss.png",
            caption="../report/mlm_loss.rst",
            category="Plots",
        ),
        curves=report(
            f"{REPORT_DIR}/finetune_curves.png",
            caption="../report/finetune_curves.rst",
            category="Plots",
        ),
        params=report(
            f"{REPORT_DIR}/f1_vs_params.png",
            caption="../report/f1_vs_params.rst",
            category="Plots",
        ),
        provenance=report(
            f"{REPORT_DIR}/provenance.json",
            caption="../report/provenance.rst",
            category="Provenance",
        ),
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
    shell:
        "python {params.script} --metrics {input.metrics} --logs {input.logs}"
        " --pretrain-logs {input.mlm} --benchmarks results/benchmarks"
        " --config-json {params.config:q} --out {params.out} > {log} 2>&1"
