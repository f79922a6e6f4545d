"""Deployment: its ONNX export (`export`, of the inference form `layers.fused.fuse_for_inference`) and the
conversion of someone else's network to dynamic shuffles (`conversion`)."""
