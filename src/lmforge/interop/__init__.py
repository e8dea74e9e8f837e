"""lmforge.interop"""
