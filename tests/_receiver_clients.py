"""A program that does not use logfunnel: it logs through the standard library's SocketHandler or
DatagramHandler, and writes what it sent (the fields a receiver must rebuild) as JSON.

Run by the receiver tests in a separate interpreter (3.10, 3.13)::

    python _receiver_clients.py tcp|udp HOST PORT COUNT EXPECTED_JSON
"""

import json
import logging
import logging.handlers
import sys

FIELDS = ("created", "process", "name", "levelno", "msg", "exc_text", "seq", "tags", "nested")


class Capture(logging.Handler):
    """Keeps each record's fields as the network handler (which ran first) left them."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def emit(self, record):
        fields = {key: getattr(record, key, None) for key in FIELDS}
        fields["msg"] = record.getMessage()  # what SocketHandler.makePickle sends as msg
        self.seen.append(fields)


def main():
    transport, host, port, count, out = (
        sys.argv[1],
        sys.argv[2],
        int(sys.argv[3]),
        int(sys.argv[4]),
        sys.argv[5],
    )
    kind = logging.handlers.SocketHandler if transport == "tcp" else logging.handlers.DatagramHandler
    sender, capture = kind(host, port), Capture()
    log = logging.getLogger("client.app")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    log.addHandler(sender)
    log.addHandler(capture)
    for seq in range(count - 1):
        extra = {"seq": seq, "tags": ["é", seq, 2.5, None], "nested": {"ключ": [1, {"b": "x"}]}}
        log.log(logging.INFO + seq % 3, "record %d of %s: naïve café ☕ 日本", seq, "client", extra=extra)
    try:
        {}["missing"]
    except KeyError:
        log.exception("it failed: %s", "ünïcode", extra={"seq": count - 1, "tags": [], "nested": {}})
    sender.close()
    with open(out, "w", encoding="utf-8") as file:
        json.dump(capture.seen, file)


if __name__ == "__main__":
    main()
