"""celeriac on the web: live progress as server-sent events.

::

    from celeriac.web import sse_response
"""

from celeriac.web.sse import sse_response

__all__ = ["sse_response"]
