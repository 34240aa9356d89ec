"""The `kopt` command line."""

import argparse
import os
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="kopt", description="Model optimization for Keras 3.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="train, prune, QAT and convert a digits CNN to a validated int8 .tflite, and report")
    demo.add_argument("--epochs", type=int, default=20, help="dense training epochs (default 20)")
    demo.add_argument("--prune-epochs", type=int, default=10, help="pruning epochs (default 10)")
    demo.add_argument("--qat-epochs", type=int, default=5, help="quantization-aware epochs (default 5)")
    demo.add_argument("--sparsity", type=float, default=0.8, help="target sparsity (default 0.8)")
    demo.add_argument("--output-dir", default="tflite_models", help="where digits_int8.tflite goes")
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    # Quiet TensorFlow's C++ start-up logs for the command line only (never at import of kopt).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.command == "demo":
        from kopt import demo as demo_lib

        demo_lib.run(epochs=args.epochs, prune_epochs=args.prune_epochs, qat_epochs=args.qat_epochs,
                     target_sparsity=args.sparsity, output_dir=args.output_dir, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
