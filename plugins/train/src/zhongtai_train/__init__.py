"""zhongtai's train plugin: experiment tracking on MLflow, scoped by project; GPU monitoring."""
