"""What happened to a line (attempts, answer or failure) and the result record written for it."""
