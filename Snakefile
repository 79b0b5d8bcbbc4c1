# dapt-workflow: domain- and task-adaptive pretraining studies, from download to report.
# Default study: config/config.yaml (pass --configfile to run your own; it replaces the default).


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/tokenize.smk"
include: "rules/pretrain.smk"
include: "rules/knn.smk"
include: "rules/robustness.smk"
include: "rules/finetune.smk"
include: "rules/baseline.smk"
include: "rules/report.smk"
include: "rules/deploy.smk"


onsuccess:
    warn_failed_runs()


# the report, each model's check; the deploy stage (rules/deploy.smk) joins it when the config has a deploy: block
rule all:
    default_target: True
    input:
        expand(layout.MODEL_CHECK, model=list(config["models"])),
        rules.report.output,
        rules.deploy_report.output if "deploy" in config else [],
