"""The Ray Serve deployments of the application: Ingress -> CacheLookup -> Summarizer, and the
summarization loop. Each module holds one deployment; the logic they run lives in plain
modules (serving.http.app, serving.summaries.lookup, serving.summaries.loop) that tests drive
without Ray."""
