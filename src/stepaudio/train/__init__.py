"""Training the default model's audio alignment (`stepaudio train align`): data synthesis, targets, loop."""
