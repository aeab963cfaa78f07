"""takes"""
