"""Training with Lightning: the LightningModule, the LightningDataModule, callbacks and the CLI."""
