# Helpers of the data rules (rules/data.smk).


def curve_args(task):
    """' --train-sizes 100,300 --sizes-key <key>' for a task with a learning curve (checked against its
    training split by the data step), else '' (the command of a study without one is unchanged).
    """
    sizes = [n for n in grid.train_sizes(config, task) if n is not None]
    if not sizes:
        return ""
    own = isinstance(
        (config["tasks"][task].get("max_examples") or {}).get("train"), list
    )
    key = f"tasks.{task}.max_examples.train" if own else "train_sizes"
    return f" --train-sizes {','.join(map(str, sizes))} --sizes-key {key}"
