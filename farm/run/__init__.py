"""The render stage: workers, the runner, the supervisor, publishing, gc and job control."""
