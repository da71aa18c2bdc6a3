"""Pure format code: index, validate and write checkpoint bytes. Nothing here starts a process."""
