"""SQL migrations, applied in file-name order by ``reconcile db migrate``."""
