"""What a person reads while a run trains: metrics.jsonl, TensorBoard, curves.png, the
progress line. Nothing here may stop training: failures are logged, never raised."""
