"""Deployment stage: export a fine-tuned run to a self-contained Hugging Face folder (`export`), to
ONNX and int8 ONNX (`onnx`), measure each format on the test split (`measure`) and tabulate and plot
the measurements (`report`). `dapt.deploy.predict` serves any exported folder or .onnx file.
"""

#: Formats the deploy stage knows, in the order they are measured and reported.
FORMATS = ("pytorch", "onnx", "onnx_int8")
