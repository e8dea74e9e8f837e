"""lmforge.objectives"""
