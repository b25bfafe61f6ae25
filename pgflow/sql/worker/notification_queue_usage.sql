select pg_notification_queue_usage()::float8 as usage
