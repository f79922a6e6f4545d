"""`dynshuffle export`: a checkpoint's inference graph (exact permutations, dynamic batch) to ONNX."""
from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="a run folder (its last checkpoint), a .safetensors or a .state.pt file")
    parser.add_argument("--onnx", required=True, metavar="OUT.onnx",
                        help="the file to write (its folder must exist)")
    parser.add_argument("--input-size", type=int, metavar="S",
                        help="side of the square input (default: the model's stem: cifar 32, tiny 64, imagenet 224)")
    parser.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default 17; 18 with --exporter dynamo)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing OUT.onnx")
    parser.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript",
                        help="torch.onnx exporter: torchscript (default; fast, small files) or dynamo "
                             "(torch.export based, slower)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the onnxruntime-vs-PyTorch comparison at batch 1 and 3")
    parser.add_argument("--benchmark", action="store_true",
                        help="also time onnxruntime against PyTorch on this CPU (batch 1 and 32)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="threads for both in --benchmark (default torch's; use 1 on a shared machine)")


def run(args: argparse.Namespace) -> int:
    from dynshuffle.checkpoints import build_model_from_checkpoint
    from dynshuffle.deploy.export import benchmark_onnx, check_out_path, data_metadata, export_onnx_report

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    check_out_path(args.onnx, args.force)  # fail on a bad path before loading anything
    # The model is built here rather than inside export_onnx so that --benchmark times the same one.
    model, meta = build_model_from_checkpoint(args.checkpoint, "cpu")
    result = export_onnx_report(model, args.onnx, args.input_size, args.opset, args.force,
                                exporter=args.exporter, verify=not args.no_verify,
                                metadata={"checkpoint": str(args.checkpoint), "epoch": str(meta.get("epoch", "")),
                                          **data_metadata(meta)})
    _, channels, size, _ = result.input_shape
    print(f"wrote {result.path} ({result.size_bytes / 1e6:.2f} MB, opset {result.opset}, {result.exporter} "
          f"exporter, {result.seconds:.1f} s)")
    norm = result.metadata
    how = (f"pixels in [0, 1] normalised with {norm['dataset']} mean {norm['mean']} std {norm['std']}"
           if "mean" in norm else "normalised as in training")
    print(f"input 'images' (batch, {channels}, {size}, {size}) float32, {how}; output 'logits'; "
          f"batch axis dynamic; checked with onnx.checker")
    if result.max_abs_diff is not None:
        print(f"onnxruntime matches PyTorch: max abs difference {result.max_abs_diff:.2e} at batch "
              f"{', '.join(map(str, result.verified_batches))}")
    elif not args.no_verify:
        print("onnxruntime is not installed: outputs not compared (pip install onnxruntime)")
    if args.benchmark:
        print("| batch | threads | onnxruntime ms | PyTorch ms | ratio |")
        print("|---|---|---|---|---|")
        for row in benchmark_onnx(model, result.path, size, threads=args.threads):
            print(f"| {row['batch']} | {row['threads']} | {row['onnxruntime_ms']:.2f} | {row['pytorch_ms']:.2f} | "
                  f"{row['ratio']:.2f} |")
    return 0
