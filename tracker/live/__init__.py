"""The live loop: sources, FaceTracker and its options, the device feed, the pipeline, sinks and the mailbox thread, result types."""
