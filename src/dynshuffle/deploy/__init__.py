"""Deployment: the ONNX export of a model's inference form (`export`) and the conversion of someone else's
network to dynamic shuffles (`conversion`)."""
