"""Registers ``edgesplit demo`` without importing the demo: building the CLI's parser stays free of numpy and torch."""

from __future__ import annotations

import argparse

__all__ = ["register_cli"]

DESCRIPTION = """\
The main job end to end, from the committed weights (or from your own bundle).

Exports the split student to a bundle (ONNX + OpenVINO), serves its decoder over HTTP on loopback, encodes each
image with DeviceEncoder as a device would, sends the payloads, and compares every answer with in-process
decoding and with the JPEG bytes the teacher would need for the same answer. Then runs a compressed full student on
the device with DeviceModel. Bundles go to a temporary directory (or to --keep DIR); nothing is left running.
"""


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_command

    return run_command(args)


def register_cli(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("demo", help="the main job end to end: device encoder -> bytes over HTTP -> server decoder",
                        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("--images", help="your own images: a folder of images, or class sub-folders named like the "
                    "model's labels for an accuracy figure (default: samples/images)")
    sp.add_argument("--bundle", help="run on your own bundle instead of exporting the committed weights (a split "
                    "bundle: device encoder -> HTTP -> decoder; a full bundle: DeviceModel)")
    sp.add_argument("--keep", metavar="DIR", help="export the bundles into DIR (new or empty) and keep them")
    sp.add_argument("--device-backend", default="openvino", choices=["openvino", "onnxruntime"])
    sp.add_argument("--server-backend", default="onnxruntime", choices=["openvino", "onnxruntime"])
    sp.add_argument("--json", help="also write the rows and summary to this JSON file")
    sp.set_defaults(func=_cmd_demo)
