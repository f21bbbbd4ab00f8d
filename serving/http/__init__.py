"""The HTTP API as a plain Starlette app, one concern per module (nothing here knows Ray):

- :mod:`serving.http.backend`: what the routes need from the rest of the app (ApiBackend);
- :mod:`serving.http.config`: the API's limits and key (ApiConfig, from Settings);
- :mod:`serving.http.errors`: the error model (ApiError, the JSON error body, the handlers);
- :mod:`serving.http.middleware`: request ids, request metrics, API key, body-size limit;
- :mod:`serving.http.routes`: the routes, one module per group, listed once (Starlette routes
  and OpenAPI from it);
- :mod:`serving.http.schemas`: the request and response models of the summary routes;
- :mod:`serving.http.openapi`: the OpenAPI document built from the routes;
- :mod:`serving.http.app`: the assembly, :func:`serving.http.app.build_api`.
"""
