"""The Ray Serve deployments of the application: Ingress -> CacheLookup -> Summarizer, and the
summarization loop. Each module holds one deployment; the logic they run lives in plain
modules (serving.api, serving.lookup, serving.summarize_loop) that tests drive without Ray."""
