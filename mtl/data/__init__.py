"""Data: on-disk sources, the synthetic default dataset, splits and the tf.data pipeline."""
