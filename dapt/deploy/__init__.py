"""Deployment stage: export a fine-tuned run to a self-contained Hugging Face folder (`export`), to
ONNX and int8 ONNX (`onnx`), measure each format on the test split (`measure`) and tabulate and plot
the measurements (`table`). `dapt.deploy.predict` labels texts with any exported folder or .onnx file.
The formats it knows, in the order they are measured and reported, are `dapt.study.defaults.DEPLOY_FORMATS`.
"""
