"""A tiny HTML reader for tests: every start tag with its attributes, and the text."""

import html.parser


class _Collector(html.parser.HTMLParser):
  def __init__(self):
    super().__init__()
    self.tags = []       # (tag, attrs dict)
    self.text = []

  def handle_starttag(self, tag, attrs):
    self.tags.append((tag, dict(attrs)))

  def handle_data(self, data):
    self.text.append(data)


def parse(page: str) -> _Collector:
  c = _Collector()
  c.feed(page)
  return c
