#include "components/xenbus/netif.h"
