"""Built-in tools: current_time, web_fetch, memory_save and memory_search."""
