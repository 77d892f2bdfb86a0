"""Motan2, the RPC protocol of Weibo's Motan framework and the Weibo Mesh agent: frames and the
Simple serialization, sans-IO. See ``protocols/motan2.md``."""
