"""The virtio-balloon driver, split by concern.

transport.py   the seam under the driver (gRPC by default; tests inject their own)
connection.py  sessions, reconnects with jittered backoff, fencing
window.py      chains from send until answered or fenced
touches.py     which frames the host must be told were touched again (sim backend)
driver.py      the ReportingDevice the policies see
"""

from guest.balloon.driver import BalloonDriver

__all__ = ["BalloonDriver"]
