"""The names of every setting Celery 5 reads, in its current lower-case form and under its old
upper-case name, as ``celery/app/defaults.py`` lists them (celeriac never imports Celery; a
test compares these with the Celery the tests install).

A Celery config holds many of them (``worker_pool``, ``broker_user``, ``task_default_queue_type``)
that are close to a celeriac setting's name without being a typo of it: knowing them keeps
such a name from being refused as a near-miss, and lets the warning that it is ignored say
it is Celery's.
"""

from __future__ import annotations

#: Celery's setting names (``worker_prefetch_multiplier``).
NAMES = frozenset(
    """
    accept_content arangodb_backend_settings azureblockblob_base_path
    azureblockblob_connection_timeout azureblockblob_container_name azureblockblob_read_timeout
    azureblockblob_retry_increment_base azureblockblob_retry_initial_backoff_sec
    azureblockblob_retry_max_attempts beat_cron_starting_deadline beat_enable_remote_control
    beat_max_loop_interval beat_remote_control_max_tick_age beat_schedule beat_schedule_filename
    beat_scheduler beat_sync_every broker_channel_error_retry broker_connection_max_retries
    broker_connection_retry broker_connection_retry_on_startup broker_connection_timeout
    broker_failover_strategy broker_heartbeat broker_heartbeat_checkrate broker_host
    broker_login_method broker_native_delayed_delivery_queue_type broker_password
    broker_pool_acquire_timeout broker_pool_limit broker_port broker_read_url broker_transport
    broker_transport_options broker_url broker_use_ssl broker_user broker_vhost broker_write_url
    cache_backend cache_backend_options cassandra_auth_kwargs cassandra_auth_provider
    cassandra_bundle_path cassandra_entry_ttl cassandra_keyspace cassandra_options
    cassandra_port cassandra_read_consistency cassandra_servers cassandra_table
    cassandra_write_consistency control_exchange control_queue_durable control_queue_exclusive
    control_queue_expires control_queue_ttl cosmosdbsql_collection_name
    cosmosdbsql_consistency_level cosmosdbsql_database_name cosmosdbsql_max_retry_attempts
    cosmosdbsql_max_retry_wait_time couchbase_backend_settings database_create_tables_at_setup
    database_engine_callback database_engine_options database_short_lived_sessions
    database_table_names database_table_schemas database_url elasticsearch_max_retries
    elasticsearch_retry_on_timeout elasticsearch_save_meta_as_text elasticsearch_timeout
    enable_utc event_exchange event_queue_durable event_queue_exclusive event_queue_expires
    event_queue_prefix event_queue_ttl event_serializer gcs_base_path gcs_bucket gcs_project
    gcs_ttl imports include mongodb_backend_settings redis_backend_use_ssl redis_db redis_host
    redis_max_connections redis_password redis_port redis_retry_on_timeout
    redis_socket_connect_timeout redis_socket_keepalive redis_socket_timeout redis_username
    result_accept_content result_backend result_backend_always_retry
    result_backend_base_sleep_between_retries_ms result_backend_max_retries
    result_backend_max_sleep_between_retries_ms result_backend_transport_options
    result_cache_max result_chord_expires result_chord_join_timeout result_chord_retry_interval
    result_compression result_exchange result_exchange_type result_expires result_extended
    result_failure_expires result_persistent result_serializer s3_access_key_id s3_base_path
    s3_bucket s3_endpoint_url s3_region s3_secret_access_key security_cert_store
    security_certificate security_digest security_key security_key_password task_acks_late
    task_acks_on_failure task_acks_on_failure_or_timeout task_acks_on_timeout
    task_allow_error_cb_on_chord_header task_always_eager task_annotations task_compression
    task_create_missing_queue_exchange_type task_create_missing_queue_type
    task_create_missing_queues task_default_delivery_mode task_default_exchange
    task_default_exchange_type task_default_priority task_default_queue task_default_queue_type
    task_default_rate_limit task_default_routing_key task_eager_propagates task_ignore_result
    task_inherit_parent_priority task_protocol task_publish_retry task_publish_retry_policy
    task_queue_max_priority task_queues task_reject_on_worker_lost task_remote_tracebacks
    task_repr_maxlevels task_retry_on_worker_lost task_routes task_send_sent_event
    task_serializer task_soft_time_limit task_store_eager_result
    task_store_errors_even_if_ignored task_time_limit task_track_started timezone worker_agent
    worker_autoscaler worker_cancel_long_running_tasks_on_connection_loss worker_concurrency
    worker_consumer worker_deduplicate_successful_tasks worker_detect_quorum_queues
    worker_direct worker_disable_prefetch worker_disable_rate_limits
    worker_enable_prefetch_count_reduction worker_enable_remote_control
    worker_enable_soft_shutdown_on_idle worker_eta_task_limit worker_hijack_root_logger
    worker_log_color worker_log_datefmt worker_log_format worker_lost_wait
    worker_max_memory_per_child worker_max_tasks_per_child worker_pool worker_pool_putlocks
    worker_pool_restarts worker_pool_start_method worker_prefetch_multiplier
    worker_proc_alive_timeout worker_redirect_stdouts worker_redirect_stdouts_level
    worker_send_task_events worker_soft_shutdown_timeout worker_state_db worker_task_log_datefmt
    worker_task_log_format worker_timer worker_timer_precision
    """.split()  # noqa: SIM905 - a word list reads better than 200 quoted strings
)

#: Celery's old upper-case names (``CELERYD_PREFETCH_MULTIPLIER``), which Celery 5 still reads.
OLD_NAMES = frozenset(
    """
    AZUREBLOCKBLOB_BASE_PATH AZUREBLOCKBLOB_CONNECTION_TIMEOUT AZUREBLOCKBLOB_CONTAINER_NAME
    AZUREBLOCKBLOB_READ_TIMEOUT AZUREBLOCKBLOB_RETRY_INCREMENT_BASE
    AZUREBLOCKBLOB_RETRY_INITIAL_BACKOFF_SEC AZUREBLOCKBLOB_RETRY_MAX_ATTEMPTS
    BROKER_CHANNEL_ERROR_RETRY BROKER_CONNECTION_MAX_RETRIES BROKER_CONNECTION_RETRY
    BROKER_CONNECTION_RETRY_ON_STARTUP BROKER_CONNECTION_TIMEOUT BROKER_FAILOVER_STRATEGY
    BROKER_HEARTBEAT BROKER_HEARTBEAT_CHECKRATE BROKER_HOST BROKER_LOGIN_METHOD
    BROKER_NATIVE_DELAYED_DELIVERY_QUEUE_TYPE BROKER_PASSWORD BROKER_POOL_ACQUIRE_TIMEOUT
    BROKER_POOL_LIMIT BROKER_PORT BROKER_READ_URL BROKER_TRANSPORT BROKER_TRANSPORT_OPTIONS
    BROKER_URL BROKER_USER BROKER_USE_SSL BROKER_VHOST BROKER_WRITE_URL CASSANDRA_AUTH_KWARGS
    CASSANDRA_AUTH_PROVIDER CASSANDRA_BUNDLE_PATH CASSANDRA_ENTRY_TTL CASSANDRA_KEYSPACE
    CASSANDRA_OPTIONS CASSANDRA_PORT CASSANDRA_READ_CONSISTENCY CASSANDRA_SERVERS
    CASSANDRA_TABLE CASSANDRA_WRITE_CONSISTENCY CELERYBEAT_CRON_STARTING_DEADLINE
    CELERYBEAT_ENABLE_REMOTE_CONTROL CELERYBEAT_MAX_LOOP_INTERVAL
    CELERYBEAT_REMOTE_CONTROL_MAX_TICK_AGE CELERYBEAT_SCHEDULE CELERYBEAT_SCHEDULER
    CELERYBEAT_SCHEDULE_FILENAME CELERYBEAT_SYNC_EVERY CELERYD_AGENT CELERYD_AUTOSCALER
    CELERYD_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS CELERYD_CONCURRENCY CELERYD_CONSUMER
    CELERYD_DEDUPLICATE_SUCCESSFUL_TASKS CELERYD_DETECT_QUORUM_QUEUES CELERYD_DISABLE_PREFETCH
    CELERYD_ENABLE_PREFETCH_COUNT_REDUCTION CELERYD_ENABLE_SOFT_SHUTDOWN_ON_IDLE
    CELERYD_ETA_TASK_LIMIT CELERYD_HIJACK_ROOT_LOGGER CELERYD_LOG_COLOR CELERYD_LOG_DATEFMT
    CELERYD_LOG_FORMAT CELERYD_MAX_MEMORY_PER_CHILD CELERYD_MAX_TASKS_PER_CHILD CELERYD_POOL
    CELERYD_POOL_PUTLOCKS CELERYD_POOL_RESTARTS CELERYD_POOL_START_METHOD
    CELERYD_PREFETCH_MULTIPLIER CELERYD_PROC_ALIVE_TIMEOUT CELERYD_SOFT_SHUTDOWN_TIMEOUT
    CELERYD_STATE_DB CELERYD_TASK_LOG_DATEFMT CELERYD_TASK_LOG_FORMAT
    CELERYD_TASK_SOFT_TIME_LIMIT CELERYD_TASK_TIME_LIMIT CELERYD_TIMER CELERYD_TIMER_PRECISION
    CELERYD_WORKER_LOST_WAIT CELERY_ACCEPT_CONTENT CELERY_ACKS_LATE CELERY_ACKS_ON_FAILURE
    CELERY_ACKS_ON_FAILURE_OR_TIMEOUT CELERY_ACKS_ON_TIMEOUT
    CELERY_ALLOW_ERROR_CB_ON_CHORD_HEADER CELERY_ALWAYS_EAGER CELERY_ANNOTATIONS
    CELERY_ARANGODB_BACKEND_SETTINGS CELERY_CACHE_BACKEND CELERY_CACHE_BACKEND_OPTIONS
    CELERY_COUCHBASE_BACKEND_SETTINGS CELERY_CREATE_MISSING_QUEUES
    CELERY_CREATE_MISSING_QUEUE_EXCHANGE_TYPE CELERY_CREATE_MISSING_QUEUE_TYPE
    CELERY_DEFAULT_DELIVERY_MODE CELERY_DEFAULT_EXCHANGE CELERY_DEFAULT_EXCHANGE_TYPE
    CELERY_DEFAULT_PRIORITY CELERY_DEFAULT_QUEUE CELERY_DEFAULT_QUEUE_TYPE
    CELERY_DEFAULT_RATE_LIMIT CELERY_DEFAULT_ROUTING_KEY CELERY_DISABLE_RATE_LIMITS
    CELERY_EAGER_PROPAGATES_EXCEPTIONS CELERY_ELASTICSEARCH_MAX_RETRIES
    CELERY_ELASTICSEARCH_RETRY_ON_TIMEOUT CELERY_ELASTICSEARCH_SAVE_META_AS_TEXT
    CELERY_ELASTICSEARCH_TIMEOUT CELERY_ENABLE_REMOTE_CONTROL CELERY_EVENT_EXCHANGE
    CELERY_EVENT_QUEUE_DURABLE CELERY_EVENT_QUEUE_EXCLUSIVE CELERY_EVENT_QUEUE_EXPIRES
    CELERY_EVENT_QUEUE_PREFIX CELERY_EVENT_QUEUE_TTL CELERY_EVENT_SERIALIZER
    CELERY_IGNORE_RESULT CELERY_IMPORTS CELERY_INCLUDE CELERY_INHERIT_PARENT_PRIORITY
    CELERY_MAX_CACHED_RESULTS CELERY_MESSAGE_COMPRESSION CELERY_MONGODB_BACKEND_SETTINGS
    CELERY_QUEUES CELERY_QUEUE_MAX_PRIORITY CELERY_REDIRECT_STDOUTS
    CELERY_REDIRECT_STDOUTS_LEVEL CELERY_REDIS_BACKEND_USE_SSL CELERY_REDIS_DB CELERY_REDIS_HOST
    CELERY_REDIS_MAX_CONNECTIONS CELERY_REDIS_PASSWORD CELERY_REDIS_PORT
    CELERY_REDIS_RETRY_ON_TIMEOUT CELERY_REDIS_SOCKET_CONNECT_TIMEOUT
    CELERY_REDIS_SOCKET_KEEPALIVE CELERY_REDIS_SOCKET_TIMEOUT CELERY_REDIS_USERNAME
    CELERY_REJECT_ON_WORKER_LOST CELERY_REMOTE_TRACEBACKS CELERY_REPR_MAXLEVELS
    CELERY_RESULT_BACKEND CELERY_RESULT_BACKEND_ALWAYS_RETRY
    CELERY_RESULT_BACKEND_BASE_SLEEP_BETWEEN_RETRIES_MS CELERY_RESULT_BACKEND_MAX_RETRIES
    CELERY_RESULT_BACKEND_MAX_SLEEP_BETWEEN_RETRIES_MS CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS
    CELERY_RESULT_CHORD_EXPIRES CELERY_RESULT_CHORD_JOIN_TIMEOUT
    CELERY_RESULT_CHORD_RETRY_INTERVAL CELERY_RESULT_COMPRESSION CELERY_RESULT_DBURI
    CELERY_RESULT_DB_SHORT_LIVED_SESSIONS CELERY_RESULT_DB_TABLENAMES
    CELERY_RESULT_ENGINE_OPTIONS CELERY_RESULT_EXCHANGE CELERY_RESULT_EXCHANGE_TYPE
    CELERY_RESULT_EXTENDED CELERY_RESULT_FAILURE_EXPIRES CELERY_RESULT_PERSISTENT
    CELERY_RESULT_SERIALIZER CELERY_RETRY_ON_WORKER_LOST CELERY_ROUTES
    CELERY_SECURITY_CERTIFICATE CELERY_SECURITY_CERT_STORE CELERY_SECURITY_DIGEST
    CELERY_SECURITY_KEY CELERY_SECURITY_KEY_PASSWORD CELERY_SEND_EVENTS
    CELERY_SEND_TASK_SENT_EVENT CELERY_STORE_EAGER_RESULT CELERY_STORE_ERRORS_EVEN_IF_IGNORED
    CELERY_TASK_PROTOCOL CELERY_TASK_PUBLISH_RETRY CELERY_TASK_PUBLISH_RETRY_POLICY
    CELERY_TASK_RESULT_EXPIRES CELERY_TASK_SERIALIZER CELERY_TIMEZONE CELERY_TRACK_STARTED
    CELERY_WORKER_DIRECT CONTROL_EXCHANGE CONTROL_QUEUE_DURABLE CONTROL_QUEUE_EXCLUSIVE
    CONTROL_QUEUE_EXPIRES CONTROL_QUEUE_TTL COSMOSDBSQL_COLLECTION_NAME
    COSMOSDBSQL_CONSISTENCY_LEVEL COSMOSDBSQL_DATABASE_NAME COSMOSDBSQL_MAX_RETRY_ATTEMPTS
    COSMOSDBSQL_MAX_RETRY_WAIT_TIME DATABASE_CREATE_TABLES_AT_SETUP DATABASE_ENGINE_CALLBACK
    DATABASE_TABLE_SCHEMAS ENABLE_UTC GCS_BASE_PATH GCS_BUCKET GCS_PROJECT GCS_TTL
    RESULT_ACCEPT_CONTENT S3_ACCESS_KEY_ID S3_BASE_PATH S3_BUCKET S3_ENDPOINT_URL S3_REGION
    S3_SECRET_ACCESS_KEY
    """.split()  # noqa: SIM905 - a word list reads better than 200 quoted strings
)


def is_celery_setting(name: str) -> bool:
    """``name`` is a setting Celery reads: its name, its old name, or its Django name
    (``CELERY_`` and the name in upper case)."""
    if name in NAMES or name in OLD_NAMES:
        return True
    return name.startswith("CELERY_") and name[len("CELERY_") :].lower() in NAMES
