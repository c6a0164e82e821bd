// The Function App on Flex Consumption (FC1): Linux, Python 3.11, scales to zero. The deployment package
// lives in a blob container the platform reads as the app identity; the same identity resolves the Key
// Vault references among the app settings.

param planName string
param appName string
param location string
param tags object
@description('Instance memory in MB (Flex offers 512, 2048 and 4096).')
param instanceMemoryMB int
@description('Upper bound of instances the platform scales out to.')
param maximumInstanceCount int
param identityId string
param storageBlobEndpoint string
param deploymentContainer string
@description('Every app setting, built in main.bicep where the other modules\' outputs meet.')
param appSettings object

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: zone redundancy on Flex Consumption needs always-ready instances and a supporting region; a demo scales to zero
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: the HTTP functions (health, vehicle alerts) serve operators and service staff over the internet, behind function keys
  // checkov:skip=CKV_AZURE_17: callers authenticate with function keys; client certificates would need one per operator and probe
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales to zero on purpose; always-ready instances are billed around the clock
  // checkov:skip=CKV_AZURE_213: /api/health needs a function key and an app scaled to zero has no instance to probe; the alert rules watch the app instead
  name: appName
  location: location
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [for setting in items(appSettings): {
        name: setting.key
        value: setting.value
      }]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storageBlobEndpoint}${deploymentContainer}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

output name string = app.name
output url string = 'https://${app.properties.defaultHostName}'
