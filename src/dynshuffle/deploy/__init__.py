"""Deployment: a model's inference form (`fuse.fuse_for_inference`), its ONNX export (`export`) and the
conversion of someone else's network to dynamic shuffles (`conversion`)."""
