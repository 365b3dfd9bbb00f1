"""What users call to train: losses, artifacts, checkpoint state, module, optimizer, schedules."""
