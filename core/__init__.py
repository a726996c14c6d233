"""What every app shares and no app owns: the API conventions, jobs, health and metrics."""
