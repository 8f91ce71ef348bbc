"""The Lightning layer: callbacks, the LightningModule, datamodules, loggers, checkpoint reading and the CLI.

Everything here may import the torch-only layers; nothing in those layers imports this package.
"""
