"""SQLite: schema and migrations, the records port and its implementation, and every query over a run's store."""
