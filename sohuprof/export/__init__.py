"""Exporters of a trace store to other tools' formats: Chrome trace-event JSON (:mod:`.chrome`)
and Perfetto's native protobuf (:mod:`.perfetto`), sharing :mod:`.selection`."""
