"""The HTTP routes, one module per group: `v1` (classify, status, metrics), `v2` (the Open
Inference Protocol for tensor clients), `admin` (pin, reload; peers by uid). Each route
handles HTTP and hands the work to the runner; decoding is the codec's."""
