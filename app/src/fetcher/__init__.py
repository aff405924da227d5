"""fetcher: the processing app that runs on every server, a Celery application over the RabbitMQ cluster.

`fetcher.app` is the Celery application (`celery -A fetcher.app worker|beat`), `fetcher.tasks` its tasks and
`fetcher.demo` the `fetcher-demo` command. Nothing is imported here, so that importing a helper module
does not read the host's configuration file.
"""
